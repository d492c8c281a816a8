<?php
// Sets "Content-Length: claim" but sends `bytes` bytes of 'x'
// (?bytes=N&claim=M): claim > bytes = body too short, claim < bytes = body too long.
require __DIR__ . '/_lib.php';
$bytes = qint('bytes', 10, 0, 64 << 20);
$claim = qint('claim', $bytes, 0, PHP_INT_MAX);
header('Content-Type: text/plain');
header('Content-Length: ' . $claim);
no_buffering();
$left = $bytes;
$guard = 0;
while ($left > 0 && $guard++ < 100000) {
    $n = min($left, 65536);
    echo str_repeat('x', $n);
    $left -= $n;
}
flush();
