NAME = "exits_helper"
