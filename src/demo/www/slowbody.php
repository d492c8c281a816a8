<?php
// Sends headers and the first part of the body, flushes, sleeps ?s=N seconds
// (default 5, max 300), then sends the rest: a body read timeout.
require __DIR__ . '/_lib.php';
$s = qint('s', 5, 0, 300);
no_buffering();
header('Content-Type: text/plain');
echo "first part\n";
flush();
sleep($s);
echo "rest after {$s}s\n";
