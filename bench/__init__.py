"""`make bench`: what the workflow costs in worker CPU, Temporal actions and waiting slots."""
