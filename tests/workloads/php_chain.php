<?php
// The PHP chain of the end-to-end tests: php_outer -> php_mid -> php_leaf,
// busy for argv[1] seconds of CPU (default 3), with php_mid also reaching
// php_leaf through usort's comparator (an internal function between PHP
// frames) and calling md5 through array_map (an internal function called
// from C).

function php_leaf(int $n): int
{
    $acc = 0;
    for ($i = 0; $i < $n; $i++) { // LEAF LOOP START
        $acc = ($acc * 31 + $i) % 1000003;
    }
    return $acc;
}

function php_mid(int $round): int
{
    if ($round % 8 == 0) {
        $items = [3, 1, 2];
        usort($items, function ($a, $b) {
            return php_leaf(20000) + $a - $b > 0 ? 1 : -1;
        });
        return $items[0];
    }
    if ($round % 8 == 4) {
        return count(array_map('md5', array_fill(0, 400, str_repeat('x', 2000))));
    }
    return php_leaf(50000);
}

function php_outer(float $seconds): int
{
    // CPU seconds, not wall time: a loaded machine still gets every sample.
    $end = null;
    $sum = 0;
    for ($round = 0; ; $round++) {
        $r = getrusage();
        $cpu = $r['ru_utime.tv_sec'] + $r['ru_stime.tv_sec']
            + ($r['ru_utime.tv_usec'] + $r['ru_stime.tv_usec']) / 1e6;
        $end ??= $cpu + $seconds;
        if ($cpu >= $end) {
            break;
        }
        $sum += php_mid($round);
    }
    return $sum;
}

echo php_outer((float)($argv[1] ?? 3)), "\n";
