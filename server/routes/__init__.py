"""One router per resource: completions, chat, models, timings, metrics, health."""
