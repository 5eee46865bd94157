#!/usr/bin/env bash
# Generates the spoken prompts in sounds/<lang>/ with espeak-ng and sox.
#
# Output per language: 0.wav ... 9.wav (one spoken digit each) and your_code_is.wav,
# all RIFF WAV, 8000 Hz, mono, 16-bit signed PCM, leading/trailing silence trimmed,
# ~80 ms of silence appended, peak-normalised to -3 dBFS.
#
# Rerunnable: files are regenerated in place; sox runs in repeatable mode without dither,
# so the same espeak-ng/sox versions produce byte-identical files.
#
# Usage: scripts/make-sounds.sh [output-root]   (default: <repo>/sounds)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${1:-"$here/../sounds"}"

ensure_tools() {
    local missing=()
    command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
    command -v sox >/dev/null 2>&1 || missing+=(sox)
    [[ ${#missing[@]} -eq 0 ]] && return 0

    echo "installing: ${missing[*]}" >&2
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -y
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y espeak-ng sox
}

ensure_tools

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# make_prompt <voice> <text> <output.wav>
make_prompt() {
    local voice="$1" text="$2" out="$3"
    local raw="$tmp/raw.wav"
    espeak-ng -v "$voice" -s 150 -w "$raw" -- "$text"
    # -R: repeatable (fixed seeds, no timestamps); -D: no dither, so output is deterministic.
    # Resample and downmix first, then trim both ends, normalise, and pad the tail.
    sox -R -D "$raw" -e signed-integer -b 16 -c 1 -r 8000 "$out.tmp.wav" \
        remix - \
        rate -h 8000 \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse \
        norm -3 \
        pad 0 0.08
    mv -f "$out.tmp.wav" "$out"
    printf '%-32s %6.3f s\n' "${out#"$root"/}" "$(soxi -D "$out")"
}

# make_language <lang> <voice> <your code is> <zero> ... <nine>
make_language() {
    local lang="$1" voice="$2" intro="$3"
    shift 3
    local dir="$root/$lang"
    mkdir -p "$dir"
    local d=0
    for word in "$@"; do
        make_prompt "$voice" "$word" "$dir/$d.wav"
        d=$((d + 1))
    done
    if [[ $d -ne 10 ]]; then
        echo "internal error: $lang has $d digit words, expected 10" >&2
        exit 1
    fi
    make_prompt "$voice" "$intro" "$dir/your_code_is.wav"
}

make_language ru ru "Ваш код" \
    ноль один два три четыре пять шесть семь восемь девять
make_language en en "Your code is" \
    zero one two three four five six seven eight nine

echo "done: $(cd "$root" && pwd)"
