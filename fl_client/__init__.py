"""The edge device: the Flower ClientApp (train / evaluate) and its view of the data stream."""
