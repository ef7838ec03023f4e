"""The site's serving pages (Django views): playground, arena and leaderboard, deployments and usage."""
