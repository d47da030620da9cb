"""Voice robot for a consumer-finance hotline."""

import os

# Rasa and TensorFlow must not phone home or chatter; set before any of them is imported.
os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")

__version__ = "0.1.0"
