
m"
timeout(ÿÿÿÿÿÿÿÿÿ"
priority*
idsINT64**
textBYTES*BaBbc