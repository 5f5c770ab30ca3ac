"""The repeatable fine-tune loop: triggers, champion/challenger promotion, history."""
