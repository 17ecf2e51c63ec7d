"""Reports above the operations: the tour of every technique and shared-script pages of many results."""
