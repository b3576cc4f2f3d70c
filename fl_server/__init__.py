"""The cloud: the Flower ServerApp with its experience/round loop, cloud training, broadcast, reports."""
