<?php
// Reads the raw request body (php://input) in 64 KiB chunks; prints "len=N sha256=HEX".
// Note: for multipart/form-data PHP consumes the body itself and php://input is empty
// (use upload.php for that).
header('Content-Type: text/plain');
$in = fopen('php://input', 'rb');
$ctx = hash_init('sha256');
$len = 0;
if ($in !== false) {
    $guard = 0;
    while (!feof($in) && $guard++ < 1000000) {
        $chunk = fread($in, 65536);
        if ($chunk === false || $chunk === '') {
            break;
        }
        $len += strlen($chunk);
        hash_update($ctx, $chunk);
    }
    fclose($in);
}
echo 'len=', $len, ' sha256=', hash_final($ctx);
