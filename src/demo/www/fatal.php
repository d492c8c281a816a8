<?php
// Uncaught exception -> "PHP Fatal error:  Uncaught RuntimeException: boom from fatal.php in .../fatal.php:5".
function explode_now(): void {
    throw new RuntimeException('boom from fatal.php');
}
explode_now();
