#!/usr/bin/env bash
# The README's grpcurl walkthrough, run against a live control plane and
# checked step by step. Needs grpcurl and python3.
#
#   tests/grpcurl/walkthrough.sh ADDR ADMIN_TOKEN
#
# Leaves no policy behind on success (it deletes the one it creates).
set -euo pipefail

addr=${1:?usage: walkthrough.sh ADDR ADMIN_TOKEN}
token=${2:?usage: walkthrough.sh ADDR ADMIN_TOKEN}
root=$(cd "$(dirname "$0")/../.." && pwd)
example="$root/deploy/examples/chat-policy.json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
auth=(-H "authorization: Bearer $token")
# json FILE EXPR: evaluates a Python expression over the JSON document `d`.
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

step "list the services (reflection)"
grpcurl -plaintext "$addr" list | tee "$work/services"
grep -qx 'shepherd.v1.PolicyService' "$work/services" || fail "PolicyService not listed"
grep -qx 'grpc.health.v1.Health' "$work/services" || fail "health not listed"

step "describe shepherd.v1.Policy"
grpcurl -plaintext "$addr" describe shepherd.v1.Policy | tee "$work/describe"
grep -q '^message Policy {' "$work/describe" || fail "Policy not described"
grep -q 'repeated .shepherd.v1.Backend backends' "$work/describe" || fail "backends missing"

step "health"
grpcurl -plaintext -d '{"service": "shepherd.v1.PolicyService"}' "$addr" grpc.health.v1.Health/Check | tee "$work/health"
grep -q '"status": "SERVING"' "$work/health" || fail "not serving"

step "a call without the token is refused"
if grpcurl -plaintext -d '{}' "$addr" shepherd.v1.PolicyService/ListPolicies 2>"$work/noauth"; then
  fail "ListPolicies without a token succeeded"
fi
cat "$work/noauth"
grep -q 'Unauthenticated' "$work/noauth" || fail "expected Unauthenticated"

step "create the example policy"
grpcurl -plaintext "${auth[@]}" -d "{\"policy\": $(cat "$example")}" \
  "$addr" shepherd.v1.PolicyService/CreatePolicy | tee "$work/created.json"
[ "$(json "$work/created.json" 'd["revision"]')" = 1 ] || fail "created at a revision other than 1"

step "get it"
grpcurl -plaintext "${auth[@]}" -d '{"name": "chat"}' \
  "$addr" shepherd.v1.PolicyService/GetPolicy > "$work/chat.json"
cat "$work/chat.json"
[ "$(json "$work/chat.json" 'd["backends"][1]["name"]')" = mistral ] || fail "wrong policy read back"

step "update it: 1% to the candidate, based on revision 1"
python3 - "$work/chat.json" "$work/update.json" <<'PY'
import json, sys
policy = json.load(open(sys.argv[1]))
policy["traffic"]["candidateWeight"] = 100
json.dump({"policy": policy}, open(sys.argv[2], "w"))
PY
grpcurl -plaintext "${auth[@]}" -d @ "$addr" shepherd.v1.PolicyService/UpdatePolicy \
  < "$work/update.json" | tee "$work/updated.json"
[ "$(json "$work/updated.json" 'd["revision"]')" = 2 ] || fail "update did not store revision 2"
[ "$(json "$work/updated.json" 'd["traffic"]["candidateWeight"]')" = 100 ] || fail "weight not updated"

step "update again with the stale revision 1: refused, nothing changes"
if grpcurl -plaintext "${auth[@]}" -d @ "$addr" shepherd.v1.PolicyService/UpdatePolicy \
  < "$work/update.json" 2>"$work/stale"; then
  fail "stale update succeeded"
fi
cat "$work/stale"
grep -q 'Code: Aborted' "$work/stale" || fail "expected Aborted"
grep -q 'revision 2, not 1' "$work/stale" || fail "message does not name the revisions"
grpcurl -plaintext "${auth[@]}" -d '{"name": "chat"}' \
  "$addr" shepherd.v1.PolicyService/GetPolicy > "$work/after.json"
[ "$(json "$work/after.json" 'd["revision"]')" = 2 ] || fail "stale update changed the policy"

step "list revisions"
grpcurl -plaintext "${auth[@]}" -d '{"name": "chat"}' \
  "$addr" shepherd.v1.PolicyService/ListPolicyRevisions | tee "$work/revisions.json"
[ "$(json "$work/revisions.json" '[r["revision"] for r in d["revisions"]]')" = "['2', '1']" ] \
  || fail "expected revisions 2 and 1"

step "a malformed policy is refused with the field and the rule"
if grpcurl -plaintext "${auth[@]}" \
  -d '{"policy": {"name": "broken", "match": {"path_prefix": "/v1/"}, "backends": [{"name": "a", "base_url": "not a url"}], "traffic": {"baseline": "a"}}}' \
  "$addr" shepherd.v1.PolicyService/CreatePolicy 2>"$work/invalid"; then
  fail "malformed policy accepted"
fi
cat "$work/invalid"
grep -q 'Code: InvalidArgument' "$work/invalid" || fail "expected InvalidArgument"
grep -q 'backends\[0\].base_url: must be an absolute http or https URL' "$work/invalid" \
  || fail "message does not name the field and rule"

step "a request that is not even a Policy is refused"
if grpcurl -plaintext "${auth[@]}" -d '{"policy": {"name": 42}}' \
  "$addr" shepherd.v1.PolicyService/CreatePolicy 2>"$work/garbled"; then
  fail "garbled request accepted"
fi
cat "$work/garbled"

step "delete it"
grpcurl -plaintext "${auth[@]}" -d '{"name": "chat"}' \
  "$addr" shepherd.v1.PolicyService/DeletePolicy | tee "$work/deleted.json"
[ "$(json "$work/deleted.json" 'd["revision"]')" = 3 ] || fail "delete not recorded as revision 3"
if grpcurl -plaintext "${auth[@]}" -d '{"name": "chat"}' \
  "$addr" shepherd.v1.PolicyService/GetPolicy 2>"$work/gone"; then
  fail "deleted policy still readable"
fi
grep -q 'Code: NotFound' "$work/gone" || fail "expected NotFound after delete"

printf '\nwalkthrough passed\n'
