#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM (JSON) of the crates linked into the `haven` binary.

Input: `cargo metadata --format-version 1 --filter-platform <target>` (the resolved graph for the
image's platform) and Cargo.lock (crates.io checksums, SHA-256 of each .crate file).

What is listed: every package reachable from `haven` through normal (not dev-, not build-)
dependency edges, on the given platform. Proc-macro crates are included (they are normal
dependencies, compiled into nothing, but they shape the code) and marked with a property.
Build-dependencies and build scripts are not listed: they run at build time and are not in the
binary. Workspace crates (path dependencies, not published) get no purl and no hash.

Deterministic: the same inputs give the same document (serialNumber is a UUIDv5 of the content,
timestamp from SOURCE_DATE_EPOCH or --timestamp), so CI can diff it.

Usage: sbom.py --metadata META.json --lock Cargo.lock [--package haven] [--binary PATH]
               [--image-digest sha256:...] [--timestamp EPOCH] --output sbom.cdx.json
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import tomllib
import uuid

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
SIMPLE_SPDX_ID = re.compile(r"^[A-Za-z0-9.\-+]+$")


def purl(name: str, version: str) -> str:
    # purl-spec: cargo names are case-sensitive and need no escaping beyond this set.
    return f"pkg:cargo/{name}@{version}"


def licenses(pkg: dict) -> list:
    expr = pkg.get("license")
    if expr:
        # Old crates write "MIT/Apache-2.0"; SPDX says "MIT OR Apache-2.0".
        expr = re.sub(r"\s*/\s*", " OR ", expr.strip())
        if SIMPLE_SPDX_ID.match(expr):
            return [{"license": {"id": expr}}]
        return [{"expression": expr}]
    if pkg.get("license_file"):
        return [{"license": {"name": f"see {os.path.basename(pkg['license_file'])} in the crate"}}]
    return []


def lock_checksums(path: str) -> dict:
    with open(path, "rb") as f:
        lock = tomllib.load(f)
    out = {}
    for p in lock.get("package", []):
        if "checksum" in p:
            out[(p["name"], p["version"], p.get("source"))] = p["checksum"]
    return out


def reachable(meta: dict, root_id: str) -> list:
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    seen, stack = set(), [root_id]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    return seen, nodes


def bom_ref(pkg: dict) -> str:
    if pkg.get("source") is None:
        return f"workspace:{pkg['name']}@{pkg['version']}"
    return purl(pkg["name"], pkg["version"])


def component(pkg: dict, checksums: dict) -> dict:
    c = {
        "type": "library",
        "bom-ref": bom_ref(pkg),
        "name": pkg["name"],
        "version": pkg["version"],
    }
    if pkg.get("description"):
        c["description"] = " ".join(pkg["description"].split())
    if pkg.get("authors"):
        c["author"] = ", ".join(pkg["authors"])
    lic = licenses(pkg)
    if lic:
        c["licenses"] = lic
    source = pkg.get("source")
    if source is not None:
        c["purl"] = purl(pkg["name"], pkg["version"])
        sha = checksums.get((pkg["name"], pkg["version"], source))
        if sha:
            c["hashes"] = [{"alg": "SHA-256", "content": sha}]
    refs = []
    if source == CRATES_IO:
        refs.append({
            "type": "distribution",
            "url": f"https://crates.io/api/v1/crates/{pkg['name']}/{pkg['version']}/download",
        })
    if pkg.get("repository"):
        refs.append({"type": "vcs", "url": pkg["repository"]})
    if pkg.get("homepage"):
        refs.append({"type": "website", "url": pkg["homepage"]})
    if refs:
        c["externalReferences"] = refs
    props = []
    if source is None:
        props.append({"name": "haven:cargo:source", "value": "workspace"})
    elif source != CRATES_IO:
        props.append({"name": "haven:cargo:source", "value": source})
    if any("proc-macro" in t["kind"] for t in pkg.get("targets", [])):
        props.append({"name": "haven:cargo:proc-macro", "value": "true"})
    if props:
        c["properties"] = props
    return c


def bundled_sqlite(pkg: dict):
    """libsqlite3-sys (feature `bundled`) compiles SQLite's C amalgamation into the binary:
    list it as a sub-component with a CPE, which is how scanners match SQLite advisories."""
    header = os.path.join(os.path.dirname(pkg["manifest_path"]), "sqlite3", "sqlite3.h")
    try:
        with open(header, encoding="utf-8", errors="replace") as f:
            m = re.search(r'#define SQLITE_VERSION\s+"([0-9.]+)"', f.read())
    except OSError:
        return None
    if not m:
        return None
    v = m.group(1)
    return {
        "type": "library",
        "bom-ref": f"pkg:generic/sqlite@{v}",
        "name": "sqlite",
        "version": v,
        "description": "SQLite amalgamation bundled by libsqlite3-sys, statically linked",
        "licenses": [{"license": {"id": "blessing"}}],
        "cpe": f"cpe:2.3:a:sqlite:sqlite:{v}:*:*:*:*:*:*:*",
        "purl": f"pkg:generic/sqlite@{v}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metadata", required=True, help="cargo metadata JSON (with --filter-platform)")
    ap.add_argument("--lock", required=True, help="Cargo.lock")
    ap.add_argument("--package", default="haven")
    ap.add_argument("--target", default="x86_64-unknown-linux-musl")
    ap.add_argument("--binary", help="the built binary: its SHA-256 goes on metadata.component")
    ap.add_argument("--image-digest", help="manifest digest of the image that ships the binary")
    ap.add_argument("--musl-version", help="version of the musl libc statically linked (e.g. 1.2.3)")
    ap.add_argument("--timestamp", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0))
    ap.add_argument("--output", required=True)
    a = ap.parse_args()

    with open(a.metadata) as f:
        meta = json.load(f)
    packages = {p["id"]: p for p in meta["packages"]}
    roots = [p for p in meta["packages"]
             if p["name"] == a.package and p["id"] in meta["workspace_members"]]
    if len(roots) != 1:
        print(f"sbom.py: workspace package {a.package!r} not found", file=sys.stderr)
        return 1
    root = roots[0]
    ids, nodes = reachable(meta, root["id"])
    checksums = lock_checksums(a.lock)

    deps = sorted((packages[i] for i in ids if i != root["id"]),
                  key=lambda p: (p["name"], p["version"], p.get("source") or ""))
    components = []
    for p in deps:
        c = component(p, checksums)
        if p["name"] == "libsqlite3-sys" and "bundled" in nodes[p["id"]].get("features", []):
            sqlite = bundled_sqlite(p)
            if sqlite:
                c["components"] = [sqlite]
        components.append(c)
    if a.musl_version:
        components.append({
            "type": "library",
            "bom-ref": f"pkg:generic/musl@{a.musl_version}",
            "name": "musl",
            "version": a.musl_version,
            "description": "musl C library, statically linked (x86_64-unknown-linux-musl)",
            "licenses": [{"license": {"id": "MIT"}}],
            "cpe": f"cpe:2.3:a:musl-libc:musl:{a.musl_version}:*:*:*:*:*:*:*",
            "purl": f"pkg:generic/musl@{a.musl_version}",
        })

    main_c = {
        "type": "application",
        "bom-ref": bom_ref(root),
        "name": root["name"],
        "version": root["version"],
        "description": "Haven, a FHIR R4 server (statically linked binary)",
    }
    if root.get("license"):
        main_c["licenses"] = licenses(root)
    if a.binary:
        h = hashlib.sha256()
        with open(a.binary, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        main_c["hashes"] = [{"alg": "SHA-256", "content": h.hexdigest()}]
    props = [{"name": "haven:cargo:target", "value": a.target}]
    if a.image_digest:
        props.append({"name": "haven:image:digest", "value": a.image_digest})
    main_c["properties"] = props

    def depends(pid):
        out = set()
        for d in nodes[pid]["deps"]:
            if d["pkg"] in ids and any(k["kind"] is None for k in d["dep_kinds"]):
                out.add(bom_ref(packages[d["pkg"]]))
        return sorted(out)

    dependencies = [{"ref": bom_ref(packages[i]), "dependsOn": depends(i)}
                    for i in sorted(ids, key=lambda i: bom_ref(packages[i]))]

    ts = datetime.datetime.fromtimestamp(a.timestamp, datetime.timezone.utc)
    body = {
        "metadata": {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{
                "type": "application",
                "name": "haven deploy/image/sbom.py",
                "description": "CycloneDX from cargo metadata and Cargo.lock",
            }]},
            "component": main_c,
        },
        "components": components,
        "dependencies": dependencies,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    bom = {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, "haven-sbom:" + digest)),
        "version": 1,
        **body,
    }
    with open(a.output, "w") as f:
        json.dump(bom, f, indent=2)
        f.write("\n")
    print(f"sbom.py: {a.output}: {len(components)} components "
          f"({sum(1 for p in deps if p.get('source') is None)} workspace crates)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
