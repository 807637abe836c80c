# Sourced by bench/gpu_check.sh (needs OUT set): `part NAME LIMIT_S COMMAND...` runs COMMAND under a
# time limit (killed 10 s after it), keeps its output in $OUT/NAME.txt and prints one JSON line, also
# appended to $OUT/parts.jsonl: rc, seconds, timed_out, the pytest tally if any, the last line if it
# is a JSON object (a benchmark's result), and the output's tail when rc != 0.
part() {
    local name=$1 limit=$2 start rc line
    shift 2
    start=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    line=$(python3 - "$name" "$rc" "$start" "$OUT/$name.txt" <<'EOF'
import json, re, sys, time
name, rc, start, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lines = open(path, errors="replace").read().splitlines()
out = {"part": name, "rc": rc, "seconds": round(time.time() - start, 1), "timed_out": rc in (124, 137)}
tally = [l for l in lines if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)", l) and " in " in l]
if tally:
    out["pytest"] = tally[-1].strip("= ")
if lines and lines[-1].startswith("{"):
    try:
        out["result"] = json.loads(lines[-1])
    except ValueError:
        pass
if rc != 0:
    out["tail"] = lines[-8:]
print(json.dumps(out))
EOF
) || line="{\"part\": \"$name\", \"rc\": $rc, \"error\": \"no JSON line: python3 failed\"}"
    echo "$line" | tee -a "$OUT/parts.jsonl"
}

