<?php
// Sends N (?n=N, default 100, max 100000) response headers of ~100 bytes each
// ("X-Filler-00001: aaaa...") to build an oversize header block.
require __DIR__ . '/_lib.php';
$n = qint('n', 100, 0, 100000);
header('Content-Type: text/plain');
for ($i = 1; $i <= $n; $i++) {
    header(sprintf('X-Filler-%05d: %s', $i, str_repeat('a', 82)));
}
echo "sent $n headers\n";
