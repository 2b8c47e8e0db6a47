from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from workflows_admin.workflows import selectors


@login_required
def overview(request):
    return render(request, "dashboard/overview.html", {"workflows": selectors.overview()})
