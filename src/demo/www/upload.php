<?php
// Accepts a POST (urlencoded, multipart or raw); reports what PHP received.
// Output: "method=M fields=F files=N bytes=B input=I" where bytes = total size of
// uploaded files (errors count 0) and input = raw php://input length.
header('Content-Type: text/plain');
$bytes = 0;
$files = 0;
foreach ($_FILES as $f) {
    foreach ((array)$f['size'] as $i => $size) {
        $files++;
        $err = is_array($f['error']) ? $f['error'][$i] : $f['error'];
        if ($err === UPLOAD_ERR_OK) {
            $bytes += (int)$size;
        }
    }
}
$input = file_get_contents('php://input');
printf("method=%s fields=%d files=%d bytes=%d input=%d",
    $_SERVER['REQUEST_METHOD'] ?? '?', count($_POST), $files, $bytes,
    strlen($input === false ? '' : $input));
