<?php
// Shared helpers for the failure gallery (not a scenario itself).
// Integer query parameter clamped to [$min, $max].
function qint(string $name, int $default, int $min, int $max): int {
    $v = isset($_GET[$name]) && is_numeric($_GET[$name]) ? (int)$_GET[$name] : $default;
    return max($min, min($max, $v));
}
// Drop every output buffer (php.ini's output_buffering=4096 included) so flush() reaches the socket.
function no_buffering(): void {
    $guard = 0;
    while (ob_get_level() > 0 && $guard++ < 16) {
        ob_end_flush();
    }
    ob_implicit_flush(true);
}
