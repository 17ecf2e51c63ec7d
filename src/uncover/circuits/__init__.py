"""Circuit discovery: the graph of heads and MLPs, EAP / EAP-IG, ACDC, circuits and faithfulness."""
