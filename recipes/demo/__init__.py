"""The demo renders the README and the tag benchmark use."""
