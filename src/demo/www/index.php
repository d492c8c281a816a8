<?php
// why502 failure gallery: every scenario, grouped by the phase in which it fails.
// Links to PHP scripts are relative to this page. Links to faults that only the fake
// FastCGI responder can produce go to $_SERVER['WHY502_FAKE_PREFIX'] (default "/fake/")
// + slug; connect-phase scenarios go to $_SERVER['WHY502_CONNECT_PREFIX'] (default
// "/connect/") + slug. The demo's router maps those prefixes to its upstreams.
$fake = $_SERVER['WHY502_FAKE_PREFIX'] ?? '/fake/';
$connect = $_SERVER['WHY502_CONNECT_PREFIX'] ?? '/connect/';

// [href, label, description]; 'php' = our script, 'fake' = fake responder slug,
// 'connect' = upstream wiring scenario.
$phases = [
    'connect' => [
        ['connect', 'socket-missing', 'unix socket path does not exist (ENOENT)'],
        ['connect', 'permission-denied', 'socket exists but listen.mode forbids us (EACCES)'],
        ['connect', 'refused', 'nothing listens on the TCP port (ECONNREFUSED)'],
        ['connect', 'backlog-full', 'the one-worker pool is busy and its listen backlog full (EAGAIN)'],
        ['connect', 'stale-socket', 'socket file left behind, nobody listening (ECONNREFUSED on a unix path)'],
        ['connect', 'timeout', 'a TCP upstream whose accept queue is full: connect times out (504)'],
        ['fake', 'ssh-peer', 'an SSH server on the FastCGI port (sends its banner)'],
        ['fake', 'http-peer', 'an HTTP server on the FastCGI port (replies 400)'],
        ['fake', 'tls-peer', 'a TLS server on the FastCGI port (sends a TLS alert)'],
    ],
    'send' => [
        ['fake', 'reset-during-send', 'resets while the request body is still being sent'],
        ['php', 'kill.php?sig=9&when=before', 'POST a big body here: worker dies before reading it'],
    ],
    'header' => [
        ['php', 'sleep.php?s=30', 'no response before the read timeout'],
        ['php', 'kill.php?sig=9&when=before', 'worker killed (SIGKILL) before any output'],
        ['php', 'kill.php?sig=11&when=before', 'worker crashed (SIGSEGV) before any output'],
        ['php', 'headers.php?n=2000', 'oversize response header block (~200 KB)'],
        ['php', 'status.php?s=abc', 'invalid Status header, passed through by PHP unchanged'],
        ['fake', 'close-before-anything', 'reads the request, closes without a byte'],
        ['fake', 'reset-before-anything', 'reads the request, resets without a byte'],
        ['fake', 'hang', 'reads the request and never answers'],
        ['fake', 'end-before-headers', 'END_REQUEST without any STDOUT'],
        ['fake', 'end-cant-mpx-conn', 'END_REQUEST with protocolStatus CANT_MPX_CONN'],
        ['fake', 'end-overloaded', 'END_REQUEST with protocolStatus OVERLOADED'],
        ['fake', 'end-unknown-role', 'END_REQUEST with protocolStatus UNKNOWN_ROLE'],
        ['fake', 'stdout-closed-early', 'empty STDOUT record in the middle of the header block'],
        ['fake', 'output-before-headers', 'HTML warning printed before the header block'],
        ['fake', 'invalid-header', 'header name with a control byte'],
        ['fake', 'invalid-status', 'Status: abc'],
    ],
    'framing' => [
        ['fake', 'bad-version', 'record with FastCGI version 2'],
        ['fake', 'unknown-record-type', 'record of undefined type 42, then a valid response'],
        ['fake', 'wrong-request-id', 'valid response, but for request id + 1'],
        ['fake', 'truncated-record', 'EOF inside a record\'s content'],
        ['fake', 'truncated-header', 'EOF inside a record header'],
    ],
    'body' => [
        ['php', 'kill.php?sig=9&when=mid', 'worker killed (SIGKILL) mid-body'],
        ['php', 'kill.php?sig=11&when=mid', 'worker crashed (SIGSEGV) mid-body'],
        ['php', 'sized.php?bytes=10&claim=1000', 'Content-Length larger than the body (too short)'],
        ['php', 'sized.php?bytes=1000&claim=10', 'Content-Length smaller than the body (too long)'],
        ['php', 'slowbody.php?s=30', 'body stalls after the first bytes (body read timeout)'],
        ['php', 'big.php?mb=64', '64 MiB streamed body (success, for throughput)'],
        ['fake', 'no-end-request', 'headers + part of body, then close without END_REQUEST'],
        ['fake', 'reset-mid-body', 'headers + part of body, then TCP reset'],
        ['fake', 'ok', 'a valid FastCGI response from the fake (control)'],
    ],
    'app' => [
        ['php', 'memory.php', 'memory_limit exhausted (PHP Fatal error, 500)'],
        ['php', 'timeout.php', 'max_execution_time exceeded in a busy loop (PHP Fatal error, 500)'],
        ['php', 'fatal.php', 'uncaught exception (PHP Fatal error with file:line, 500)'],
        ['php', 'missing.php', 'no such script: PHP-FPM says "Primary script unknown" (404)'],
        ['php', 'uploads/avatar.jpg/x.php', 'the /uploads/x.jpg/x.php attack: security.limit_extensions denial (403)'],
        ['php', 'warning.php', 'display_errors on: the warning ends up in the body'],
        ['php', 'warning.php?late_header=1', 'header() after output: "headers already sent"'],
        ['php', 'location.php', 'Location without Status: PHP turns it into 302'],
        ['php', 'hello.php', 'success: "hello"'],
        ['php', 'info.php?a=1', 'success: the request as PHP saw it (JSON)'],
        ['php', 'echo.php', 'POST a body: length and sha256 of what PHP read'],
        ['php', 'upload.php', 'POST a form/upload: what PHP parsed'],
    ],
];

function href(string $kind, string $target, string $fake, string $connect): string {
    switch ($kind) {
        case 'fake': return $fake . $target;
        case 'connect': return $connect . $target;
        default: return $target;
    }
}

header('Content-Type: text/html; charset=UTF-8');
?><!doctype html>
<html><head><meta charset="utf-8"><title>why502 failure gallery</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee}
h2{border-bottom:1px solid #ccc}li{margin:.2em 0}.k{color:#888;font-size:80%}</style></head>
<body><h1>why502 failure gallery</h1>
<p>Each link fails (or succeeds) for a real, named reason. Follow one and read the cause why502 reports.</p>
<?php foreach ($phases as $phase => $items): ?>
<h2><?= htmlspecialchars($phase) ?></h2>
<ul>
<?php foreach ($items as [$kind, $target, $desc]):
    $h = href($kind, $target, $fake, $connect); ?>
<li><a href="<?= htmlspecialchars($h) ?>"><code><?= htmlspecialchars($h) ?></code></a>
 &mdash; <?= htmlspecialchars($desc) ?> <span class="k">(<?= $kind ?>)</span></li>
<?php endforeach; ?>
</ul>
<?php endforeach; ?>
</body></html>
