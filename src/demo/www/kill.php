<?php
// Kills its own FPM worker with a real signal (?sig=9|11, default 9).
// ?when=before (default): dies before any output -> FPM sends nothing, closes the socket.
// ?when=mid: sends headers + 16 KiB of body, flush()es, then dies mid-body.
// ?claim=N (optional): also sends "Content-Length: N".
// FPM's log then says "child PID exited on signal 9 (SIGKILL)" / "signal 11 (SIGSEGV...)".
require __DIR__ . '/_lib.php';
$sig = qint('sig', 9, 1, 64);
$when = $_GET['when'] ?? 'before';
function die_now(int $sig): void {
    $pid = getmypid();
    if (function_exists('posix_kill')) {
        posix_kill($pid, $sig);
    } else {
        exec('kill -' . $sig . ' ' . (int)$pid);
    }
    usleep(2000000); // signal delivery is immediate; never reached in practice
    echo "\nstill alive?!";
}
if ($when === 'mid') {
    no_buffering();
    header('Content-Type: text/plain');
    if (isset($_GET['claim'])) {
        header('Content-Length: ' . qint('claim', 0, 0, PHP_INT_MAX));
    }
    echo str_repeat("partial body line ........................................\n", 256);
    flush();
    usleep(50000);
}
die_now($sig);
