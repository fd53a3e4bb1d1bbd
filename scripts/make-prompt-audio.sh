#!/usr/bin/env bash
# Regenerate src/modelwatch/data/prompt-say-ok-24k.pcm, the spoken prompt of realtime audio probes:
# "Say OK." spoken by espeak-ng, as raw PCM16 little-endian, 24 kHz, mono (what OpenAI Realtime and
# Gemini Live take), with 300 ms of silence after it. Needs Debian's espeak-ng and sox.
set -euo pipefail
out="$(dirname "$0")/../src/modelwatch/data/prompt-say-ok-24k.pcm"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 150 -w "$tmp/say.wav" "Say OK."
sox "$tmp/say.wav" -r 24000 -c 1 -b 16 -e signed-integer -L -t raw "$out" pad 0 0.3
echo "wrote $out ($(stat -c %s "$out") bytes)"
