"""KFP pipelines of taudis: the round pipeline (for schedules) and the campaign pipeline (simulation)."""
