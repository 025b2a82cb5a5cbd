def group_name(channel):
    """Channels allows only letters, digits, '-', '_' and '.' in a group name."""
    return "hub." + str(channel).replace(":", ".")
