#!/usr/bin/env bash
# bench_merge.sh: `taskloom merge` against mergekit on TIES and DARE-TIES of three SmolLM2-135M
# "fine-tunes" (../shared/peers/merge_make_finetunes.py), same YAML, same run, CPU.
#
#   REFPY=/path/to/.refstack/bin/python bash scripts/bench_merge.sh      [RUNS=5] [ANCHOR_THREADS=2]
#
# Prints the machine's copy bandwidth first (anchor=membw, read+write counted), then per method the
# peer's line (anchor=merge_mergekit ...) and taskloom's (bench=merge_taskloom ...: wall_s,
# peak_rss_MB, ratios to mergekit, and the compute phase: bytes read + written over the seconds
# the engine spent computing — reading the mapped inputs included, writing excluded — and its ratio
# to the copy bandwidth). Every figure is a median of RUNS timed runs after one warm-up (page cache
# warm). The load average is printed before and after.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REFPY=${REFPY:-$ROOT/.refstack/bin/python}
PEERS=${PEERS:-$ROOT/../shared/peers}
export ANCHOR_WORK=${ANCHOR_WORK:-${TMPDIR:-/tmp}/anchors}
export ANCHOR_THREADS=${ANCHOR_THREADS:-2}
RUNS=${RUNS:-5}
DEVICE=${DEVICE:-cpu}
METHODS=${METHODS:-ties dare_ties}
[ -f "$ANCHOR_WORK/smollm2-hf/model.safetensors" ] || "$REFPY" "$PEERS/smollm2_convert.py"
[ -f "$ANCHOR_WORK/merge/ft3/model.safetensors" ] || "$REFPY" "$PEERS/merge_make_finetunes.py"
(cd "$ROOT" && cargo build --release -q -p taskloom-cli)
# A private copy under target/ (/tmp may be noexec): a rebuild mid-run cannot change it.
mkdir -p "$ROOT/target/bench"
BIN=$ROOT/target/bench/taskloom-merge
cp "$ROOT/target/release/taskloom" "$BIN"
export RAYON_NUM_THREADS=$ANCHOR_THREADS
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
bw=$("$REFPY" "$PEERS/membw.py")
echo "$bw"
copy=$(echo "$bw" | sed -n "s/.* copy_${ANCHOR_THREADS}t=\([0-9.]*\).*/\1/p")
for method in $METHODS; do
  peer=$("$REFPY" "$PEERS/merge_mergekit.py" --method "$method" --runs "$RUNS")
  echo "$peer"
  cfg=$ANCHOR_WORK/merge/$method.yml
  out=$ANCHOR_WORK/merge/out-taskloom-$method
  walls=(); rss=(); comp=()
  for i in $(seq 0 "$RUNS"); do
    rm -rf "$out"
    tmp=$(mktemp)
    log=$(/usr/bin/time -v "$BIN" merge "$cfg" -o "$out" --device "$DEVICE" --random-seed 0 --json 2>&1 >"$tmp")
    if [ "$i" -gt 0 ]; then
      walls+=("$(echo "$log" | sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' | awk -F: '{print (NF==3 ? $1*3600+$2*60+$3 : $1*60+$2)}')")
      rss+=("$(echo "$log" | sed -n 's/.*Maximum resident set size (kbytes): //p')")
      comp+=("$(sed -n 's/.*"compute_seconds": *\([0-9.e+-]*\).*/\1/p' "$tmp")")
    fi
    rm -f "$tmp"
  done
  w=$(printf '%s\n' "${walls[@]}" | median)
  r=$(printf '%s\n' "${rss[@]}" | median)
  c=$(printf '%s\n' "${comp[@]}" | median)
  pw=$(echo "$peer" | sed -n 's/.* wall_s=\([0-9.]*\).*/\1/p')
  pr=$(echo "$peer" | sed -n 's/.* peak_rss_MB=\([0-9.]*\).*/\1/p')
  io=$(echo "$peer" | awk '{for(i=1;i<=NF;i++){split($i,kv,"="); if(kv[1]=="read_bytes"||kv[1]=="written_bytes") s+=kv[2]} print s}')
  awk -v m="$method" -v w="$w" -v r="$r" -v c="$c" -v pw="$pw" -v pr="$pr" -v io="$io" -v copy="$copy" -v runs="$RUNS" -v t="$ANCHOR_THREADS" -v d="$DEVICE" 'BEGIN {
    printf "bench=merge_taskloom method=%s device=%s threads=%s runs=%d wall_s=%.2f peak_rss_MB=%.0f eff_GB_s=%.3f time_ratio=%.4f rss_ratio=%.3f compute_s=%.3f compute_GB_s=%.2f copy_GB_s=%s compute_vs_copy=%.3f\n",
      m, d, t, runs, w, r/1024, io/w/1e9, w/pw, (r/1024)/pr, c, io/c/1e9, copy, (io/c/1e9)/copy }'
done
echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)"
