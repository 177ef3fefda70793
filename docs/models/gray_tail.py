#!/usr/bin/env python3
"""How long the pooled-loss rules take to turn a gray rack DEGRADED, by traffic.

A model of the rules in agent/core/src/detector/gray.rs and hold.rs, nothing else:
each host of the rack gathers retransmissions (seen by its outside observers) as a
Poisson process; every 100 ms tick the count over the 2 s loss window is summed over
the rack's hosts without the worst one; the condition holds while that is at least
`degraded_min_retrans` (5), and DEGRADED is confirmed once it has held for
`degraded_confirm` (1 s) without a break. The significance test and the ratio bar
are left out: with nothing lost elsewhere, the count binds first.

    python3 docs/models/gray_tail.py          # the table in docs/benchmarks.md
"""
import math
import random

TICK = 0.1
WINDOW_TICKS = 20  # loss_window, 2 s
CONFIRM_TICKS = 10  # degraded_confirm, 1 s
MIN_RETRANS = 5
NEVER = 99.0


def poisson(mean, rng):
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p < limit:
            return k
        k += 1


def degraded_after(rate, hosts, rng, confirm=CONFIRM_TICKS, relaxed=None, seconds=8.0):
    """Seconds from the start of the loss to DEGRADED (NEVER within `seconds`)."""
    ticks = int(seconds / TICK)
    counts = [[poisson(rate * TICK, rng) for _ in range(hosts)] for _ in range(ticks)]
    since = None
    for t in range(ticks):
        window = counts[max(0, t - WINDOW_TICKS + 1) : t + 1]
        per_host = [sum(tick[h] for tick in window) for h in range(hosts)]
        rest = sum(per_host) - max(per_host)
        bar = MIN_RETRANS if since is None or relaxed is None else relaxed
        if rest >= bar:
            since = t if since is None else since
            if t - since >= confirm:
                return (t + 1) * TICK
        else:
            since = None
    return NEVER


def quantile(xs, q):
    xs = sorted(xs)
    return xs[int(q * (len(xs) - 1))]


def main():
    rng = random.Random(3)
    rows = [
        ("2.5 (about this lab)", 2.5, {}),
        ("2.5, the count relaxed to 3 once degrading", 2.5, {"relaxed": 3}),
        ("2.5, no confirm", 2.5, {"confirm": 0}),
        ("3", 3.0, {}),
        ("5 (twice this lab)", 5.0, {}),
        ("10", 10.0, {}),
    ]
    print("| retransmissions a second per host | p50 | p90 | p99 | runs over 3 s |")
    print("|---|---|---|---|---|")
    for name, rate, how in rows:
        runs = [degraded_after(rate, 3, rng, **how) for _ in range(3000)]
        over = sum(r > 3.0 for r in runs) / len(runs)
        print(
            f"| {name} | {quantile(runs, 0.5):.1f} s | {quantile(runs, 0.9):.1f} s "
            f"| {quantile(runs, 0.99):.1f} s | {over:.1%} |"
        )


if __name__ == "__main__":
    main()
