"""Attribution: how much each component writes towards an answer."""
