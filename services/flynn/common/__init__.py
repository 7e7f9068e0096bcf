"""Small pieces shared by every component and by the CLIs: config, logging, HTTP, sd_notify."""
