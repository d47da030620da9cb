"""Stream mode's media: the AudioSocket protocol (sans-IO), paced playback, VAD endpointing, and the
caller's turn fed to a streaming recognizer. See /work/shared/STREAMING.md for the wire facts."""
