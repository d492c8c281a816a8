<?php
// Dumps the request as PHP saw it, as JSON with recursively sorted keys (parity tests
// compare this between nginx and why502).
function ksort_rec(array $a): array {
    ksort($a, SORT_STRING);
    foreach ($a as $k => $v) {
        if (is_array($v)) {
            $a[$k] = ksort_rec($v);
        }
    }
    return $a;
}
$input = file_get_contents('php://input');
$out = ksort_rec([
    'SERVER' => $_SERVER,
    'GET' => $_GET,
    'POST' => $_POST,
    'COOKIE' => $_COOKIE,
    'FILES' => $_FILES,
    'input_length' => strlen($input === false ? '' : $input),
]);
header('Content-Type: application/json');
echo json_encode($out, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE
    | JSON_PRETTY_PRINT | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
