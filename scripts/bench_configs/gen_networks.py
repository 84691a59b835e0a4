#!/usr/bin/env python3
"""Write the 10,000-network deny list of the ipfilter benchmark (deterministic: seed 11).

    .venv/bin/python scripts/bench_configs/gen_networks.py > scripts/bench_configs/ipfilter_10k.txt

Two thirds IPv4 (/8 to /32), one third IPv6 (/16 to /128), none containing 127.0.0.1,
the address wrk connects from: every benchmarked request is admitted after a full
lookup that matches nothing, the most expensive case (one probe per distinct length).
"""

import ipaddress
import random

rng = random.Random(11)
loopback = ipaddress.ip_address("127.0.0.1")
print("# ipfilter benchmark: 10,000 networks (scripts/bench_configs/gen_networks.py)")
n = 0
while n < 10_000:
    if rng.random() < 2 / 3:
        net = ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(8, 32)), strict=False)
        if loopback in net:
            continue
    else:
        net = ipaddress.IPv6Network((rng.getrandbits(128), rng.randint(16, 128)), strict=False)
    print(net)
    n += 1
