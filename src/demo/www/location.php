<?php
// Location without an explicit status: PHP turns it into "Status: 302 Found".
header('Location: /hello.php');
