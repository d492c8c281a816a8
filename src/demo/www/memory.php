<?php
// Exhausts memory_limit for real ("Allowed memory size of N bytes exhausted").
// Use with php_admin_value[memory_limit]=32M; if the limit is unlimited, caps itself at 64M.
if (ini_get('memory_limit') === '-1') {
    ini_set('memory_limit', '64M');
}
$a = [];
for ($i = 0; $i < 4000000; $i++) {   // bounded: ~4 GiB worth of 1 KiB strings
    $a[] = str_repeat('x', 1024) . $i;
}
echo "unreachable: ", count($a);
