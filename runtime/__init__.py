"""What our processes run with around the workflows and activities: the payload codec
(worker, starter, codec server), JSON logs with redaction, the metrics and heartbeat
interceptors and the health endpoint. None of it talks to an outside system of the
product, so it is not in activities/; the heartbeat interceptor beats for every
activity but is installed by the worker, and no activity imports it."""
