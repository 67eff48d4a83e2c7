"""The job stage: job table, local executor with worker processes, the worker pipeline."""
