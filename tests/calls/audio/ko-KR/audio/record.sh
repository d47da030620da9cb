#!/bin/sh
# How the caller recordings here were made: espeak-ng's Korean voice, converted to what Asterisk records
# (8 kHz mono 16-bit WAV, normalized to -1 dBFS). Each .txt beside a WAV is what the caller says.
#
# espeak-ng's Korean is far from a real caller's, and the Korean Vosk model recognizes little of it; the
# voice variant, rate and (for 상담원) a phoneme spelling below were searched for until the model
# recognized each utterance under the grammar of the state it is said in. Its rules turn a non-initial
# ㄱ into a uvular [q] (연결 → j'@nqj@L); the phoneme spelling gives [g], and [S] for the ㅅ of 상.
# Recorded once and committed: a later espeak-ng may pronounce differently. Re-run from this folder.
set -eu
record() {  # name, reference text, espeak-ng input, voice, words per minute
    espeak-ng -v "$4" -s "$5" -w "$1.tmp.wav" "$3"
    sox -V1 "$1.tmp.wav" -r 8000 -c 1 -b 16 "$1.wav" gain -n -1
    rm -f "$1.tmp.wav"
    printf '%s\n' "$2" > "$1.txt"
}
record agent "상담원" "[[S'aNdamw@n]]" ko+f2 160
record agent_connect "상담원 연결" "[[S'aNdamw@n j'@ngj@L]]" ko+f2 170
record balance_request "계좌에 남은 금액" "계좌에 남은 금액" ko+f2 110
record balance_word "잔액" "잔액" ko+klatt 175  # recognized, but with low confidence (0.40)
record thanks "고마워요" "고마워요" ko+klatt 140
record goodbye "그럼 이만" "그럼 이만" ko+klatt 135
record no "아니요 틀려요" "아니요 틀려요" ko+f2 140
