"""Jobs on other machines: the node publishes each due job to a Celery queue on RabbitMQ;
``ainode worker`` processes run them and hand the results back over the node's HTTP API."""
