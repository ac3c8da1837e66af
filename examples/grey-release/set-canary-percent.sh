#!/usr/bin/env bash
# Sets the canary share of the release policy's percentage rule, live:
#   examples/grey-release/set-canary-percent.sh PERCENT [POLICY]
# PERCENT is 0..100 with at most two decimals; POLICY defaults to `push`
# (examples/config/release-push.yaml, seeded by `make run`). The policy is read
# from etcd, its first `percent` rule changed, and written back with
# `sidestreamctl apply --base-revision`, so a concurrent change by someone else
# makes this fail instead of being overwritten.
# SIDESTREAMCTL (default target/release/sidestreamctl) and the usual
# SIDESTREAM_ETCD_ENDPOINTS / SIDESTREAM_PREFIX environment apply.
set -euo pipefail
cd "$(dirname "$0")/../.."
percent="${1:?usage: set-canary-percent.sh PERCENT [POLICY]}"
policy="${2:-push}"
ctl="${SIDESTREAMCTL:-target/release/sidestreamctl}"
[ -x "$ctl" ] || ctl="$(command -v sidestreamctl || true)"
[ -n "$ctl" ] || { echo "set-canary-percent: sidestreamctl not found (make run builds target/release/sidestreamctl)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$ctl" -o json get release "$policy" >"$work/current.json"
base="$(python3 - "$work/current.json" "$percent" "$work/policy.json" <<'PY'
import json, sys
current, percent, out = sys.argv[1], sys.argv[2], sys.argv[3]
objects = json.load(open(current))
obj = objects[0] if isinstance(objects, list) else objects
rules = [r for r in obj["spec"].get("rules", []) if r.get("type") == "percent"]
if not rules:
    sys.exit(f"release policy '{obj['name']}' has no percent rule to change")
value = float(percent)
rules[0]["percent"] = int(value) if value.is_integer() else value
json.dump({"kind": obj["kind"], "name": obj["name"], "spec": obj["spec"]}, open(out, "w"), indent=2)
print(obj["modRevision"])
PY
)"
"$ctl" apply --base-revision "$base" "$work/policy.json"
echo "release policy '$policy': $percent% of users (by the percent rule's key) now go to canary"
