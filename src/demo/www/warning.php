<?php
// Turns display_errors on at run time, then triggers a real warning.
// In PHP-FPM the warning text is ordinary output: it lands in the BODY, after the
// headers ("<br />\n<b>Warning</b>:  Undefined variable $x in <b>.../warning.php</b>
// on line <b>N</b><br />\n"), and log_errors also sends
// "PHP message: PHP Warning:  Undefined variable $x in ..." on FastCGI STDERR.
// With php.ini's output_buffering=4096 the warning is still buffered, so a header()
// after it still works. ?late_header=1 flushes the buffers first, so header() then
// fails with a second (body) warning "Cannot modify header information - headers
// already sent by (output started at ...)" and X-Late is dropped.
ini_set('display_errors', '1');
header('Content-Type: text/html');
echo $x;
echo "after warning\n";
if (!empty($_GET['late_header'])) {
    $guard = 0;
    while (ob_get_level() > 0 && $guard++ < 16) {
        ob_end_flush();
    }
    flush();
    header('X-Late: 1');
}
