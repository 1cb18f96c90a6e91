"""What a run folder holds, by name: the coordinator writes it, platforms and tools read it."""

ROUNDS_FILE = "rounds.jsonl"  # one JSON line per round
SUMMARY_FILE = "summary.json"  # best round, its test metrics, the run's flat config
ADAPTER_DIR = "adapter"  # the best fused model: PEFT folder + head.safetensors
PRIVATE_DIR = "private"  # simulation only: <run>/private/<platform>/round-<r>.safetensors
