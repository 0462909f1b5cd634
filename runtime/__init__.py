"""What our processes run with around the workflows and activities: the payload codec
(worker, starter, codec server), JSON logs with redaction, metrics and heartbeats (one
interceptor around every activity, interceptor.py) and the health endpoint. None of it
talks to an outside system of the product, so it is not in activities/; the heartbeats
are for every activity but installed by the worker, and no activity imports them."""
