<?php
// Streams N MiB (?mb=N, default 1, max 1024) of deterministic bytes in 64 KiB chunks,
// flush()ing each one; no Content-Length (so FPM's response is read-until-END_REQUEST).
// Byte at offset k is chr((k % 65536) % 251).
require __DIR__ . '/_lib.php';
$mb = qint('mb', 1, 0, 1024);
no_buffering();
header('Content-Type: application/octet-stream');
$block = '';
for ($i = 0; $i < 65536; $i++) {
    $block .= chr($i % 251);
}
for ($n = 0; $n < $mb * 16; $n++) {
    echo $block;
    flush();
}
