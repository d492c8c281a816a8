<?php
// Sends a raw "Status: <s>" header (?s=..., default "418 I'm a teapot").
// PHP-FPM passes it through unchanged, even invalid ones like "abc" or "99 x".
header('Content-Type: text/plain');
$s = $_GET['s'] ?? "418 I'm a teapot";
$s = str_replace(["\r", "\n"], '', $s);
header('Status: ' . $s);
echo "status requested: $s\n";
