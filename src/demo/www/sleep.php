<?php
// Sleeps ?s=N seconds (default 1, max 300; wall time, not CPU) then prints "slept N".
// Used for read timeouts and to saturate a 1-child pool.
require __DIR__ . '/_lib.php';
$s = qint('s', 1, 0, 300);
sleep($s);
header('Content-Type: text/plain');
echo "slept $s";
