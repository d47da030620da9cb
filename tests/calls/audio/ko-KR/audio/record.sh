#!/bin/sh
# How the caller recordings here were made: espeak-ng's Korean voice, converted to what Asterisk records
# (8 kHz mono 16-bit WAV, normalized to -1 dBFS). Each .txt beside a WAV is what the caller says.
#
# espeak-ng's Korean is far from a real caller's, and the Korean Vosk model recognizes little of it; the
# voice variant, rate and (for 상담원) a phoneme spelling below were searched for until the model
# recognized each utterance under the grammar of the state it is said in. Its rules turn a non-initial
# ㄱ into a uvular [q] (연결 → j'@nqj@L); the phoneme spelling gives [g], and [S] for the ㅅ of 상.
# Recorded once and committed: a later espeak-ng may pronounce differently. Re-run from this folder.
#
# The model reads most of these recordings differently when 20 ms more or less of silence precede the
# speech (measured: 0-400 ms of leading silence in 20 ms steps, decoded in the file recognizer's 500 ms
# and the stream recognizer's 100 ms batches). Record mode decodes the whole file; stream mode hands
# Vosk the speech from LEAD_MS (140 ms, ivr/media/stream.py) before its first frame at or above
# Asterisk's silence threshold (RMS 256). `placed` recordings therefore start with exactly that much
# digital silence before their first such 20 ms frame: both modes then hear the very same audio
# (tests/test_stream.py replays every audio golden in stream mode). How many of the 42 lead-ins read
# right is noted per recording: of 2,040 settings of 상담원, 상담원 연결 and other requests for a person
# (every voice variant, rates 130-175, phoneme spellings) none read right at all of them, 교환원 did;
# of 476 settings of 잔액 (alone, with a filler, phoneme-spelled) one read as 잔액 with low confidence
# once placed. The first three below are the earlier recordings, unplaced: the stream path's lead-in
# happens to give the same reading for them. They were made with sox's default dither (random, within 2
# of 32768), so a re-run remakes them only that closely.
set -eu
LEAD_MS=140
speak() {  # target, espeak-ng input, voice, words per minute
    espeak-ng -v "$3" -s "$4" -w "$1.tmp.wav" "$2"
    sox -V1 -D "$1.tmp.wav" -r 8000 -c 1 -b 16 "$1" gain -n -1  # -D: no dither, the same file every run
    rm -f "$1.tmp.wav"
}
record() {  # name, reference text, espeak-ng input, voice, words per minute
    speak "$1.wav" "$3" "$4" "$5"
    printf '%s\n' "$2" > "$1.txt"
}
placed() {  # the same, then: the samples above 1 % of full scale, the first 20 ms with RMS >= 256 at
            # LEAD_MS after digital silence, 300 ms of digital silence after the last
    speak "$1.wav" "$3" "$4" "$5"
    python3 - "$1.wav" "$LEAD_MS" <<'EOF'
import array, math, sys, wave
path, lead = sys.argv[1], int(sys.argv[2]) * 8
with wave.open(path) as w:
    s = array.array("h", w.readframes(w.getnframes()))
loud = [i for i, v in enumerate(s) if abs(v) > 327]
s = s[loud[0] : loud[-1] + 1]
energy = sum(v * v for v in s[:160])
start = 0
while math.sqrt(energy / 160) < 256:
    energy += s[start + 160] ** 2 - s[start] ** 2
    start += 1
out = array.array("h", bytes(2 * max(0, lead - start))) + s[max(0, start - lead):] + array.array("h", bytes(4800))
with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(8000)
    w.writeframes(out.tobytes())
EOF
    printf '%s\n' "$2" > "$1.txt"
}
record agent_connect "상담원 연결" "[[S'aNdamw@n j'@ngj@L]]" ko+f2 170
record balance_request "계좌에 남은 금액" "계좌에 남은 금액" ko+f2 110
record goodbye "그럼 이만" "그럼 이만" ko+klatt 135
placed agent "교환원" "교환원" ko+RicishayMax2 150  # 42 of 42 lead-ins
placed balance_word "잔액" "잔액" ko+klatt4 200  # recognized, but with low confidence (0.46); 0 of 42
placed thanks "고마워요" "고마워요" ko+klatt 135  # 42 of 42
placed no "아니오" "아니오" ko+f4 140  # 42 of 42
