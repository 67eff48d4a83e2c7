"""Result delivery: the outbox, per-destination senders (C-STORE SCU, folder), its CLI."""
