<?php
// Busy loop (CPU time: on Linux max_execution_time counts CPU time, sleep() does not)
// until max_execution_time kills it ("Maximum execution time of N seconds exceeded").
// Bounded by wall clock: gives up after ?s=N seconds (default 30, max 300).
require __DIR__ . '/_lib.php';
$end = microtime(true) + qint('s', 30, 1, 300);
$x = '';
while (microtime(true) < $end) {
    for ($i = 0; $i < 10000; $i++) {
        $x = md5($x);
    }
}
echo "loop ended without hitting max_execution_time";
