<?php
// Simplest success: 200, text/plain, body "hello".
header('Content-Type: text/plain');
echo "hello";
