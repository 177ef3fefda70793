#!/usr/bin/env python3
"""Write a Faultline topology file from an inventory export.

The input is a CSV file with a header row and these columns:

    site,cabinet,rack,host,addresses,rack_prefixes

One row per host: `addresses` are the host's addresses and `rack_prefixes` its
rack's prefixes, each separated by semicolons. A rack's prefixes may be given on
any of its rows (they are merged); a row with an empty `host` declares a rack (with
its prefixes) that has no listed hosts. Sites, cabinets and racks are declared as
they first appear, in file order, so sites of different shapes need no special
treatment: a site with one cabinet, a cabinet with one rack, racks of one host.

    python3 docs/inventory-to-topology.py inventory.csv -o topology.toml
    faultline topology check topology.toml

Errors name the CSV line. Only the Python 3 standard library is used.
"""

import argparse
import csv
import ipaddress
import json
import sys

COLUMNS = ["site", "cabinet", "rack", "host", "addresses", "rack_prefixes"]


class InventoryError(Exception):
    pass


def split_list(text):
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def toml_string(text):
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(text)


def toml_list(items):
    return "[" + ", ".join(toml_string(i) for i in items) + "]"


def read_inventory(stream, name):
    reader = csv.DictReader(stream)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InventoryError(f"{name}:1: missing column(s): {', '.join(missing)}")
    sites = {}  # site -> {cabinet -> {rack -> {"prefixes": [], "hosts": {host: [addr]}}}}
    seen_addresses = {}
    seen_prefixes = {}
    for row in reader:
        line = reader.line_num
        where = f"{name}:{line}"
        site, cabinet, rack, host = (
            (row.get(c) or "").strip() for c in ("site", "cabinet", "rack", "host")
        )
        if not (site and cabinet and rack):
            raise InventoryError(f"{where}: site, cabinet and rack are required")
        for label, value in (("site", site), ("cabinet", cabinet), ("rack", rack), ("host", host)):
            if "/" in value:
                raise InventoryError(f"{where}: {label} `{value}` contains `/`")
        racks = sites.setdefault(site, {}).setdefault(cabinet, {})
        entry = racks.setdefault(rack, {"prefixes": [], "hosts": {}})
        rack_path = f"{site}/{cabinet}/{rack}"
        for text in split_list(row.get("rack_prefixes")):
            try:
                prefix = ipaddress.ip_network(text, strict=True)
            except ValueError as e:
                raise InventoryError(f"{where}: rack_prefixes: `{text}`: {e}") from None
            owner = seen_prefixes.setdefault(prefix, rack_path)
            if owner != rack_path:
                raise InventoryError(f"{where}: prefix {prefix} is already rack {owner}'s")
            if str(prefix) not in entry["prefixes"]:
                entry["prefixes"].append(str(prefix))
        addresses = split_list(row.get("addresses"))
        if not host:
            if addresses:
                raise InventoryError(f"{where}: addresses without a host name")
            continue
        if host in entry["hosts"]:
            raise InventoryError(f"{where}: host {rack_path}/{host} is listed twice")
        if not addresses:
            raise InventoryError(f"{where}: host {host} has no addresses")
        parsed = []
        for text in addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError as e:
                raise InventoryError(f"{where}: addresses: {e}") from None
            owner = seen_addresses.setdefault(address, f"{rack_path}/{host}")
            if owner != f"{rack_path}/{host}":
                raise InventoryError(f"{where}: address {address} is already {owner}'s")
            parsed.append(str(address))
        entry["hosts"][host] = parsed
    if not sites:
        raise InventoryError(f"{name}: no rows")
    return sites


def render(sites, source):
    out = [
        f"# Faultline topology generated from {source} by docs/inventory-to-topology.py.",
        "# Check it with: faultline topology check FILE",
        "",
    ]
    for site in sites:
        out += ["[[site]]", f"name = {toml_string(site)}", ""]
    for site, cabinets in sites.items():
        for cabinet in cabinets:
            out += ["[[cabinet]]", f"name = {toml_string(cabinet)}", f"site = {toml_string(site)}", ""]
    for site, cabinets in sites.items():
        for cabinet, racks in cabinets.items():
            for rack, entry in racks.items():
                out += ["[[rack]]", f"name = {toml_string(rack)}",
                        f"cabinet = {toml_string(f'{site}/{cabinet}')}"]
                if entry["prefixes"]:
                    out.append(f"prefixes = {toml_list(entry['prefixes'])}")
                out.append("")
    for site, cabinets in sites.items():
        for cabinet, racks in cabinets.items():
            for rack, entry in racks.items():
                for host, addresses in entry["hosts"].items():
                    out += ["[[host]]", f"name = {toml_string(host)}",
                            f"rack = {toml_string(f'{site}/{cabinet}/{rack}')}",
                            f"addresses = {toml_list(addresses)}", ""]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(
        description="Write a Faultline topology (TOML) from an inventory CSV: "
        "site,cabinet,rack,host,addresses,rack_prefixes (lists separated by `;`).")
    parser.add_argument("inventory", help="the CSV file, or - for stdin")
    parser.add_argument("-o", "--output", help="the topology file to write (default: stdout)")
    args = parser.parse_args()
    try:
        if args.inventory == "-":
            sites = read_inventory(sys.stdin, "<stdin>")
        else:
            with open(args.inventory, newline="", encoding="utf-8") as f:
                sites = read_inventory(f, args.inventory)
    except (InventoryError, OSError, csv.Error) as e:
        print(f"inventory-to-topology: {e}", file=sys.stderr)
        return 1
    text = render(sites, args.inventory)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
