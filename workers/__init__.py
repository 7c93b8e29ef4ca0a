"""The worker and completion-consumer processes, and the tools."""
